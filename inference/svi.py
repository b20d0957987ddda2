"""SVI training of a Pyro model/guide pair on the joint ELBO.

The loss is Pyro's ``Trace_ELBO`` differentiable loss divided by the batch size (negative ELBO
per item), minimised with ``torch.optim.Adam`` and gradient-norm clipping over every parameter
of the variant: encoder, decoder, codebook and prior train together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "TrainSettings",
    "TrainResult",
    "resolve_device",
    "train",
    "negative_elbo",
    "estimate_elbo",
]


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


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings.

    Attributes:
        steps: SVI steps (> 0).  batch_size: items per step.  lr: Adam learning rate.
        clip_norm: gradient-norm clip.  lr_decay: ``"cosine"`` (to 0 at the last step) or
        ``"none"``.  seed: seed of parameters, batches and the ELBO's noise.
    """

    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    clip_norm: float = 10.0
    lr_decay: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be a positive integer, got {self.steps}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.lr_decay not in ("cosine", "none"):
            raise ValueError(f"lr_decay must be 'cosine' or 'none', got {self.lr_decay!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    """Per-step negative ELBO per item (``losses``) and the wall time of the loop."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def negative_elbo(variant: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The training loss: a one-sample estimate of the negative ELBO per item, plus any surrogate
    terms the guide adds with ``pyro.factor`` (a differentiable scalar)."""
    return Trace_ELBO().differentiable_loss(variant.model, variant.guide, x) / x.shape[0]


@torch.no_grad()
def estimate_elbo(variant: nn.Module, x: torch.Tensor, repeats: int = 10) -> tuple[float, float]:
    """The ELBO per item (nats) on ``x``, its mean over ``repeats`` one-sample estimates and the
    standard error of that mean. Surrogate sites named in ``variant.surrogate_sites`` are left out,
    so the figure is the bound itself."""
    guide = poutine.block(variant.guide, hide=list(getattr(variant, "surrogate_sites", ())))
    values = torch.tensor(
        [-float(Trace_ELBO().loss(variant.model, guide, x)) / x.shape[0] for _ in range(repeats)]
    )
    stderr = float(values.std() / repeats**0.5) if repeats > 1 else float("nan")
    return float(values.mean()), stderr


def train(
    variant: nn.Module,
    data: torch.Tensor,
    settings: TrainSettings,
    progress: bool = True,
) -> TrainResult:
    """Train ``variant`` on ``data: (N, ...)`` (already on the variant's device).

    Raises ``FloatingPointError`` naming the step when the loss or a gradient is not finite.
    """
    if data.shape[0] == 0:
        raise ValueError("the training data set is empty")
    if not torch.isfinite(data).all():
        raise ValueError("the training data contain NaN or inf values")
    optimiser = torch.optim.Adam(variant.parameters(), lr=settings.lr, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda i: (
            0.5 * (1 + math.cos(math.pi * i / settings.steps))
            if settings.lr_decay == "cosine"
            else 1.0
        ),
    )
    generator = torch.Generator(device=data.device).manual_seed(settings.seed)
    result = TrainResult()
    start = time.perf_counter()
    bar = tqdm(range(1, settings.steps + 1), disable=not progress, desc="SVI", unit="step")
    for step in bar:
        index = torch.randint(
            data.shape[0], (settings.batch_size,), generator=generator, device=data.device
        )
        loss = negative_elbo(variant, data[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(variant.parameters(), settings.clip_norm)
        value = float(loss.detach())
        if not (math.isfinite(value) and math.isfinite(float(grad_norm))):
            raise FloatingPointError(
                f"non-finite {'loss' if not math.isfinite(value) else 'gradient'} at step {step}"
            )
        optimiser.step()
        schedule.step()
        result.losses.append(value)
        if step % 50 == 0:
            bar.set_postfix(neg_elbo=f"{value:.2f}")
    result.seconds = time.perf_counter() - start
    pyro.clear_param_store()
    return result
