"""Prior and posterior draws from a variant, through Pyro's effect handlers.

- Prior (Algorithm 2): the model run with its observation uncondition-ed, so every site is drawn
  from the generative program: z^T -> ... -> z^1 -> z_q^0 -> x (tight; the paper's chain runs
  to z_e^0 and draws z_q^0 | z_e^0).
- Posterior: the guide's draw of z_e^0 and z_q^0 for given data, and the decoder's mean on that
  z_q^0 (a reconstruction).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pyro import poutine
from torch import nn

from pbridge.bridge_prior import prior_options
from pbridge.ou_bridge import OUSchedule
from pbridge.samplers import ANCESTRAL, OnStep, SamplerSettings
from pbridge.variant import AutoregressivePrior, CodeDistribution

from .progress import QUIET, Progress
from .run_dir import atomic_write

__all__ = [
    "Draws",
    "sample_prior",
    "sample_posterior",
    "write_prior_draws",
    "check_sampler",
    "check_memory_for_draws",
    "chain_progress",
]


def check_sampler(variant: nn.Module, sampler: SamplerSettings) -> None:
    """Refuse ``sampler`` for ``variant`` before any draw: a variant without a diffusion chain
    (VQ-VAE, PixelCNN) draws its own way and takes only the default; a chain (the ``schedule``
    of a bridge, or of the bridge prior on codes) must have the steps asked for
    (:meth:`~pbridge.samplers.SamplerSettings.check_chain`)."""
    schedule = getattr(variant, "schedule", None)
    if isinstance(schedule, OUSchedule):
        sampler.check_chain(schedule.num_steps)
    elif sampler != ANCESTRAL:
        raise ValueError(
            f"a {type(variant).__name__} has no diffusion chain: --sampler {sampler.name} and "
            "its options do not apply"
        )


def chain_progress(
    variant: nn.Module, sampler: SamplerSettings, progress: Progress, what: str
) -> OnStep | None:
    """``progress``'s ``on_step(done, total)`` for one draw of ``variant``'s prior (``what``
    is drawn, e.g. ``"8 draws"``): a bar over the backward chain's steps (drawn by ``sampler``)
    or, for an :class:`~pbridge.variant.AutoregressivePrior`, over its cells. ``None`` when
    ``progress`` shows nothing."""
    if isinstance(variant, AutoregressivePrior):
        return progress.steps(f"autoregressive prior, {what}", "cell")
    return progress.steps(f"backward chain ({sampler.name}), {what}")


@dataclass(frozen=True)
class Draws:
    """One draw per item.

    Attributes:
        z_e: ``(N, d, *cells)`` continuous latent z_e^0 (``None`` for variants without one: the
            VQ-VAE and the PixelCNN baseline).
        codes: ``(N, *cells)`` code indices of z_q^0 as drawn by the program.
        mode_codes: ``(N, *cells)`` the most probable code of every cell under the site's
            :attr:`~pbridge.variant.CodeDistribution.conditional_logits` (prior draws: the
            tight read-out at z^1, the paper's kernel at z_e^0; posterior draws of the paper
            formulation: the guide's kernel); ``codes`` where it is ``None`` (VQ-VAE,
            PixelCNN, the tight guide's point mass).
        x_mean: decoder mean on z_q^0 ``(N, ...)``.
        x: the program's draw of x (prior) or the data (posterior).
    """

    z_e: torch.Tensor | None
    codes: torch.Tensor
    mode_codes: torch.Tensor
    x_mean: torch.Tensor
    x: torch.Tensor


def _draws(variant: nn.Module, trace: poutine.Trace, x: torch.Tensor) -> Draws:
    z_e = trace.nodes["z_e_0"]["value"] if "z_e_0" in trace.nodes else None
    z_q_site = trace.nodes["z_q_0"]
    fn: CodeDistribution = z_q_site["fn"]
    codes = fn.indices(z_q_site["value"])
    logits = fn.conditional_logits
    return Draws(
        z_e=z_e,
        codes=codes,
        mode_codes=codes if logits is None else logits.argmax(-1),
        x_mean=variant.decoder(z_q_site["value"]).mean,
        x=x,
    )


def _available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: CUDA's free bytes, or the system's MemAvailable (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory_for_draws(
    num: int,
    data_shape: tuple[int, ...],
    latent_shape: tuple[int, ...],
    num_codes: int,
    device: torch.device,
) -> None:
    """Refuse ``num`` prior draws whose results alone (x and its mean, z_e, z_q, the codes'
    logits, twice over for the work in between) would not fit in the device's free memory;
    ``latent_shape = (d, *cells)``."""
    cells = math.prod(latent_shape[1:])
    per_item = 4 * (2 * math.prod(data_shape) + 2 * math.prod(latent_shape))
    per_item += 4 * cells * (num_codes + 4)
    needed, available = 2 * num * per_item, _available_bytes(device)
    if available is not None and needed > available:
        raise ValueError(
            f"{num} draws need at least {needed / 2**30:.1f} GiB of memory, and {device} has "
            f"{available / 2**30:.1f} GiB free; ask for fewer"
        )


@torch.no_grad()
def sample_prior(
    variant: nn.Module,
    num: int,
    sampler: SamplerSettings = ANCESTRAL,
    progress: Progress = QUIET,
) -> Draws:
    """``num`` draws from the generative model (every site sampled, x included), the bridge's
    chain drawn by ``sampler`` (:func:`~pbridge.bridge_prior.prior_options`), its steps (an
    autoregressive prior's cells) shown by ``progress`` (:func:`chain_progress`)."""
    if num <= 0:
        raise ValueError(f"num must be a positive integer, got {num}")
    check_sampler(variant, sampler)
    param = next(variant.parameters())
    num_codes = variant.codebook.num_codes
    check_memory_for_draws(num, variant.data_shape, variant.latent_shape, num_codes, param.device)
    shape_x = variant.data_shape
    placeholder = torch.zeros((num, *shape_x), dtype=param.dtype, device=param.device)
    on_step = chain_progress(variant, sampler, progress, f"{num} draws")
    model = prior_options(poutine.uncondition(variant.model), sampler=sampler, on_step=on_step)
    trace = poutine.trace(model).get_trace(placeholder)
    return _draws(variant, trace, trace.nodes["x"]["value"])


def write_prior_draws(
    variant: nn.Module, path: Path, num: int, sampler: SamplerSettings, progress: Progress
) -> tuple[Draws, dict[str, float]]:
    """``num`` prior draws of ``variant`` by ``sampler`` (:func:`sample_prior`), written whole to
    ``path`` (``{"codes", "mode_codes", "x"}``: the decoder means as x); the draws and
    ``{"num", "seconds_per_draw"}``."""
    start = time.perf_counter()
    draws = sample_prior(variant, num, sampler, progress)
    seconds = time.perf_counter() - start
    with atomic_write(path) as tmp:
        saved = {"codes": draws.codes, "mode_codes": draws.mode_codes, "x": draws.x_mean}
        torch.save({name: value.cpu() for name, value in saved.items()}, tmp)
    return draws, {"num": num, "seconds_per_draw": seconds / num}


@torch.no_grad()
def sample_posterior(variant: nn.Module, x: torch.Tensor, *labels: torch.Tensor) -> Draws:
    """The guide's draw of z_e^0, z_q^0 for data ``x`` (and the class ``labels`` ``(N,)`` of a
    variant that takes them) and the decoder mean (reconstruction)."""
    trace = poutine.trace(variant.guide).get_trace(x, *labels)
    return _draws(variant, trace, x)
