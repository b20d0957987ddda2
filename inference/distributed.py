"""Data-parallel SVI with torch.distributed: DistributedDataParallel over the Pyro loss.

One process per device, launched by ``torchrun`` (or ``pbridge train --devices N``, which
re-launches itself through torchrun). Every process holds the whole variant; per step each
takes its own shard of the global batch from a :class:`~torch.utils.data.DistributedSampler`,
computes the negative ELBO of its shard with its own random draws (chain steps t, noise), and
DDP averages the gradients across processes during ``backward``. Because the loss is a mean
over items, the averaged gradient is the gradient of the mean loss over the global batch.

Pyro's ``Trace_ELBO`` runs the model and guide as methods of the variant, not as ``forward``;
:class:`ELBOLoss` makes the loss the ``forward`` of a module that owns the variant, so DDP's
gradient hooks and buffer broadcasts (BatchNorm statistics) apply to it unchanged.

Random draws of a process at a step depend only on (seed, rank, step) (:func:`step_seed`), and
the global batch of a step only on (seed, step) and the data size, so a run resumes bit-exactly
with the same number of processes, and correctly (other draws) with another number.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from . import bound

__all__ = [
    "World",
    "world_from_environment",
    "ELBOLoss",
    "step_seed",
    "local_batches",
    "mean_over_processes",
]


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel job: ``rank`` in ``0..size-1`` and the device
    index on its machine, ``local_rank``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_environment(device: torch.device | None = None) -> World:
    """The world torchrun describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; joins the process
    group (NCCL on CUDA, gloo on CPU) when there is more than one process. A single process
    (no torchrun) gets ``World()`` and nothing is initialised."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank)


class ELBOLoss(nn.Module):
    """``forward(x, latent_scale)`` = the training loss of ``variant`` on ``x`` (negative ELBO
    per item plus surrogates), as a module DDP can wrap."""

    def __init__(self, variant: nn.Module) -> None:
        super().__init__()
        self.variant = variant

    def forward(self, x: torch.Tensor, latent_scale: float = 1.0) -> torch.Tensor:
        return bound.negative_elbo(self.variant, x, latent_scale)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of process ``rank`` at ``step``: distinct across processes and steps."""
    return (seed * 1_000_003 + rank) * 1_000_033 + step


def local_batches(
    num_items: int, batch_size: int, world: World, seed: int, first_step: int
) -> Iterator[torch.Tensor]:
    """Indices of this process's shard of the global batch, for steps ``first_step, ...``.

    Each epoch is one shuffle of the data (``DistributedSampler`` with ``seed``, epoch number
    ``set_epoch``, the last incomplete batch dropped), dealt to the processes; a process takes
    ``batch_size / world.size`` items per step.
    """
    if batch_size % world.size:
        raise ValueError(
            f"the batch size {batch_size} must be divisible by the number of processes {world.size}"
        )
    local = batch_size // world.size
    sampler = DistributedSampler(
        range(num_items), world.size, world.rank, shuffle=True, seed=seed, drop_last=True
    )
    per_epoch = len(sampler) // local
    if per_epoch == 0:
        raise ValueError(
            f"{num_items} items are fewer than one global batch of {batch_size} per epoch"
        )
    epoch, position = divmod(first_step - 1, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for start in range(position * local, per_epoch * local, local):
            yield order[start : start + local]
        epoch, position = epoch + 1, 0


def mean_over_processes(values: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``values`` over the processes (itself for one process)."""
    if world.size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world.size
